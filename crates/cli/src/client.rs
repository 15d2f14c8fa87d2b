//! `flashrack status`, `flashrack run start|stop`: commands for a running
//! station, through `flashrack_app::client`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use flashrack_app::client::{ArmRun, RunImage, StationClient};
use flashrack_core::{ByteSize, Verdict, VerifyMode};
use flashrack_station::{PortState, Snapshot};

use crate::cli::{ClientArgs, RunCommand};

/// The client `--server` and `--token` (or `$FLASHRACK_SERVER`,
/// `$FLASHRACK_TOKEN`) name.
fn client(args: &ClientArgs) -> StationClient {
    let base = args
        .server
        .clone()
        .or_else(|| std::env::var("FLASHRACK_SERVER").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("FLASHRACK_TOKEN").ok());
    StationClient::new(&base, token)
}

/// `flashrack status` (blocking: call it off the async workers).
pub fn status(args: &ClientArgs, json_output: bool) -> Result<ExitCode> {
    let client = client(args);
    if json_output {
        let value = client.station_json()?;
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        out!("{}", status_table(&client.station()?))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The `status` table: a line per port, then the run.
pub fn status_table(snapshot: &Snapshot) -> String {
    let mut rows = vec![[
        "PORT".to_string(),
        "STATE".into(),
        "DEVICE".into(),
        "PROGRESS".into(),
        "VERDICT".into(),
    ]];
    for port in &snapshot.ports {
        let device = port.device.as_ref().map_or("-".to_string(), |d| {
            format!(
                "{} {} {} ({})",
                d.vendor.as_deref().unwrap_or(""),
                d.model.as_deref().unwrap_or(""),
                d.serial.as_deref().unwrap_or("no serial"),
                ByteSize(d.capacity)
            )
            .trim()
            .to_string()
        });
        let progress = match (&port.progress, port.state.is_busy()) {
            (Some(p), true) if p.total > 0 => format!(
                "{}% {:.1} MB/s",
                p.done * 100 / p.total,
                p.bytes_per_sec / 1e6
            ),
            _ => "-".into(),
        };
        let verdict = match (&port.verdict, &port.refusal, port.state) {
            (_, Some(refusal), PortState::Refused) => format!("refused: {refusal}"),
            (Some(verdict), _, _) => {
                // A pass in the words of what it proved, as the records and
                // the dashboard say it: never a plain "pass" for a sampled,
                // sparse or unverified one.
                let mut text = match (verdict, &port.figures) {
                    (Verdict::Pass, Some(figures)) => figures.pass_words(),
                    _ => verdict.to_string(),
                };
                // A verdict always says which run (and image) it is about; one
                // of another run is not a verdict of the current one.
                if let Some(of) = &port.verdict_run {
                    text.push_str(&format!(" (run {}, {})", of.run_id, of.image_name));
                    if snapshot
                        .run
                        .as_ref()
                        .is_some_and(|run| !port.verdict_is_of(run))
                    {
                        text.push_str(" — not this run");
                    }
                }
                if port.ejected {
                    text.push_str(" (ejected)");
                }
                text
            }
            (None, _, PortState::Detected) if port.passed_before.is_some() => format!(
                "a stick with its serial passed in this run (attempt {}): not written unless asked",
                port.passed_before.expect("checked")
            ),
            _ => "-".into(),
        };
        rows.push([
            port.label.clone(),
            port.state.to_string(),
            device,
            progress,
            verdict,
        ]);
    }
    let mut out = crate::table::render(&rows);
    match &snapshot.run {
        Some(run) => out.push_str(&run_line(run)),
        None => out.push_str("no run armed\n"),
    }
    out
}

/// The run's line under the ports: its counts as the records keep them, a
/// refusal and an interruption apart from a failure.
fn run_line(run: &flashrack_station::RunView) -> String {
    format!(
        "run {}: {} ({}), {} — {} passed, {} failed, {} refused, {} interrupted, {} active{}\n",
        run.id,
        run.image_name,
        run.image_sha256.short(),
        if run.armed {
            "armed".to_string()
        } else {
            format!("stopped: {}", run.stop_reason.map_or("", |r| r.describe()))
        },
        run.passed,
        run.failed,
        run.refused,
        run.interrupted,
        run.active,
        run.remaining
            .map_or(String::new(), |r| format!(", {r} to go")),
    )
}

/// `flashrack run start|stop` (blocking: call it off the async workers).
pub fn run(command: RunCommand) -> Result<ExitCode> {
    match command {
        RunCommand::Start {
            client: args,
            image,
            station_file,
            sha256,
            sha256sums,
            signature,
            keyring,
            bmap,
            no_bmap,
            zip_entry,
            target_count,
            verify,
            no_verify,
            eject_on_pass,
            operator,
            lot,
            force_raw,
        } => {
            if target_count == Some(0) {
                bail!("--target-count must be at least 1");
            }
            let verify = if no_verify { VerifyMode::None } else { verify };
            // Options only a download takes (--signature needs --sha256sums
            // and --keyring: clap enforces it).
            let url_only = sha256sums.is_some() || bmap.is_some() || no_bmap || zip_entry.is_some();
            let image = match (image, station_file) {
                (_, Some(path)) => {
                    if url_only {
                        bail!("--sha256sums, --signature, --keyring, --bmap, --no-bmap and --zip-entry are for a URL, not --station-file");
                    }
                    RunImage::StationFile { path, sha256 }
                }
                (Some(url), None) if url.starts_with("http://") || url.starts_with("https://") => {
                    // The station takes the keys as text: a binary keyring
                    // is armored here, and a file that holds no key is
                    // refused before the station is asked.
                    let keyring = keyring
                        .as_deref()
                        .map(flashrack_app::downloads::keyring_text)
                        .transpose()?;
                    RunImage::Url {
                        url,
                        sha256,
                        sha256sums,
                        signature,
                        keyring,
                        bmap,
                        no_bmap,
                        zip_entry,
                    }
                }
                (Some(image), None) => {
                    if sha256.is_some() || url_only {
                        bail!("--sha256, --sha256sums, --signature, --keyring, --bmap, --no-bmap and --zip-entry are for a URL or --station-file, not a cached image");
                    }
                    RunImage::Cached(image)
                }
                (None, None) => bail!("give the image: a cached image, a URL or --station-file"),
            };
            let run = client(&args).arm(&ArmRun {
                image,
                verify,
                eject_on_pass,
                target_count,
                operator,
                lot,
                force_raw,
            })?;
            match &run.import {
                Some(import) => outln!(
                    "run {} armed: {}, following its import from {} (sticks are written as it arrives; none passes before its sha256 is known)",
                    run.id,
                    run.image_name,
                    import.source
                )?,
                None => outln!(
                    "run {} armed: {} ({})",
                    run.id,
                    run.image_name,
                    run.image_sha256
                )?,
            }
        }
        RunCommand::Stop {
            client: args,
            reason,
        } => {
            client(&args).stop(reason.as_deref())?;
            outln!("run stopped")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use flashrack_station::RunView;

    #[test]
    fn the_run_line_counts_refusals_and_interruptions_apart_from_failures() {
        let run = RunView {
            id: flashrack_core::RunId(7),
            image_sha256: flashrack_core::Sha256Digest::of(b"os"),
            image_name: "os.img".into(),
            image_size: 2,
            options: Default::default(),
            armed: true,
            passed: 5,
            failed: 1,
            interrupted: 2,
            refused: 3,
            active: 4,
            bytes_written: 0,
            remaining: Some(6),
            stop_reason: None,
            import: None,
            recording: false,
        };
        let line = super::run_line(&run);
        assert!(
            line.ends_with(
                "armed — 5 passed, 1 failed, 3 refused, 2 interrupted, 4 active, 6 to go\n"
            ),
            "{line}"
        );
    }

    #[test]
    fn the_status_table_says_what_a_pass_proved_and_names_a_pass_it_may_repeat() {
        use flashrack_core::{AttemptFigures, AttemptId, Verdict, VerifyMethod};
        use flashrack_station::{PortState, PortView, Snapshot};
        let port = |label: &str| PortView::empty(label.into(), None, true, None);
        let mut unverified = port("A1");
        unverified.state = PortState::Passed;
        unverified.verdict = Some(Verdict::Pass);
        unverified.figures = Some(AttemptFigures {
            verify_method: Some(VerifyMethod::None),
            ..AttemptFigures::default()
        });
        let mut again = port("A2");
        again.state = PortState::Detected;
        again.passed_before = Some(AttemptId(12));
        let snapshot = Snapshot {
            station_id: "s".into(),
            ports: vec![unverified, again],
            run: None,
            arming: None,
        };
        let table = super::status_table(&snapshot);
        let line = |label: &str| {
            table
                .lines()
                .find(|l| l.starts_with(label))
                .unwrap()
                .to_string()
        };
        assert!(line("A1").ends_with("written, not verified"), "{table}");
        assert!(
            line("A2").contains("passed in this run (attempt 12): not written unless asked"),
            "{table}"
        );
    }
}
